/// VeilServing: the serving layer of DESIGN.md.
///
/// It owns the accelerator service, which speaks the KServe v2 / Triton
/// `inference.GRPCInferenceService` protocol over gRPC and runs a model tail with Veil's engine
/// (a lone request runs at once; concurrent ones are batched by `BatchScheduler`, whose
/// executors for one model version share weights and working memory), the KServe v2 client the
/// enclave uses to reach any such server (`TailBackend`: the tail run in-process or on a remote
/// server), and the enclave service (engine, sessions, service, wire, one file each), which
/// completes the attested handshake of VeilTEE, runs the head on decrypted inputs and encrypts
/// the answers; the clients of both, with enclave replicas and failover (`EnclaveReplicas`); the
/// gRPC health service; the open streams on which both hops carry their requests (the
/// enclave's `InferStream`, Triton's `ModelStreamInfer`), served and called through one pair of
/// types (Streams.swift: `serveInOrder`, `ExchangeStream`) with a fallback to the unary calls;
/// plan.json's deployment part (`DeploymentPlan`), which both servers
/// read; and the key-release service that hands a sealed head's key to an attested enclave.
/// Every size, rate and duration a peer controls is bounded here (Limits.swift;
/// docs/security.md, "Servers"); domain errors become protocol statuses only at each service's
/// edge. Its metrics (Metrics.swift) include the latency summaries, median and nearest-rank
/// percentile, that the profiler and the CLI's benchmarks report too. It builds on VeilTensor,
/// VeilGraph, VeilFormats, VeilData and VeilTEE and must not import VeilTrain,
/// VeilPrivacy or VeilPlanning: it must not train, plan or write reports, and the enclave side
/// must never log or write plaintext inputs or keys.
public enum VeilServing {}
