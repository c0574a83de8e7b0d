// VeilServing: the serving layer of DESIGN.md. It owns the accelerator service, which speaks the
// KServe v2 / Triton `inference.GRPCInferenceService` protocol over gRPC and runs a model tail
// with Veil's engine, the KServe v2 client the enclave uses to reach any such server, and the
// enclave service, which completes the attested handshake of VeilTEE, runs the head on
// decrypted inputs and encrypts the answers. It must not train, plan or write reports, and the
// enclave side must never log or write plaintext inputs or keys.
public enum VeilServing {}
