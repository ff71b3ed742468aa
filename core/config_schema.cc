// The one place where every configuration key is declared, with its default, range and meaning.
// `ringtrain train --help-config` prints this table.
#include "core/config.h"

namespace ringtrain {

const std::vector<ConfigKey>& ConfigSchema() {
  using T = ConfigType;
  static const std::vector<ConfigKey> schema = {
      // General
      {"name", T::kString, "gpt", -1e300, 1e300, {}, "run name, used for the default run directory"},
      {"seed", T::kInt, "1337", 0, 9.2e18, {}, "seed of every random stream (init, dropout, data order)"},
      {"threads", T::kInt, "0", 0, 4096, {}, "thread budget for BLAS and OpenMP loops (0: RINGTRAIN_THREADS or all cores)"},
      {"device", T::kString, "cpu", -1e300, 1e300, {"cpu", "cuda"},
       "where forward/backward run (GPT and CNN models): cpu, or cuda (one GPU per local rank: local rank mod visible "
       "GPUs)"},
      {"precision", T::kString, "fp32", -1e300, 1e300, {"fp32", "bf16"},
       "device cuda: fp32, or bf16 mixed precision (GPT: every Linear's product from bf16 inputs on tensor cores, fp32 "
       "accumulation, the activations they read stored in bf16; parameters, gradients, the residual stream, optimizer "
       "state and reductions stay fp32). device cpu: fp32"},
      {"attention", T::kString, "auto", -1e300, 1e300, {"auto", "flash", "materialized"},
       "device cuda, GPT: flash = the fused kernel (no (T,T) matrix stored; head sizes 16/32/64/128, no dropout; under "
       "precision bf16 on tensor cores for head sizes 32/64/128); materialized = scores and probabilities stored, "
       "products by cuBLAS (TF32 tensor cores under bf16); auto = flash where it applies, except under bf16 with a head "
       "size the tensor-core kernel lacks, where materialized is taken while every layer's scores fit in a quarter of "
       "the GPU's memory"},
      // Model
      {"model.type", T::kString, "gpt", -1e300, 1e300, {"gpt", "mlp", "lenet", "resnet"}, "model family"},
      {"model.n_layer", T::kInt, "2", 1, 1024, {}, "Transformer blocks"},
      {"model.n_head", T::kInt, "4", 1, 1024, {}, "attention heads (must divide n_embd)"},
      {"model.n_embd", T::kInt, "64", 1, 65536, {}, "model width"},
      {"model.block_size", T::kInt, "128", 1, 1048576, {}, "context length"},
      {"model.vocab_size", T::kInt, "0", 0, 16777216, {}, "vocabulary size (0: taken from the data)"},
      {"model.dropout", T::kFloat, "0.0", 0, 0.99, {}, "dropout on embeddings, attention and residual paths"},
      {"model.bias", T::kBool, "true", -1e300, 1e300, {}, "biases in Linear and LayerNorm"},
      {"model.hidden", T::kString, "256,128", -1e300, 1e300, {}, "mlp: hidden layer sizes, comma-separated"},
      {"model.depth", T::kInt, "20", 8, 1000, {}, "resnet: depth 6n+2 (8, 14, 20, ...)"},
      {"model.width", T::kInt, "16", 1, 4096, {}, "resnet: channels of the first stage (doubling per stage)"},
      {"model.batch_norm", T::kBool, "true", -1e300, 1e300, {}, "resnet: BatchNorm after each convolution"},
      {"model.bn_momentum", T::kFloat, "0.1", 0, 1, {}, "BatchNorm running-statistics momentum"},
      {"model.loss", T::kString, "cross_entropy", -1e300, 1e300, {"cross_entropy", "mse"}, "image classifiers: loss"},
      // Data
      {"data.source", T::kString, "auto", -1e300, 1e300, {"auto", "synthetic", "text", "tokens", "mnist", "cifar10", "synthetic_images"},
       "auto: text when data.path is set, else synthetic (images: mnist, cifar10, synthetic_images)"},
      {"data.path", T::kString, "", -1e300, 1e300, {}, "text file (char-level) or train token file (uint16 LE)"},
      {"data.val_path", T::kString, "", -1e300, 1e300, {}, "validation token file (tokens source); empty: split data.path"},
      {"data.val_fraction", T::kFloat, "0.1", 0.0001, 0.9, {}, "tail fraction of the data used for validation"},
      {"data.synthetic.vocab", T::kInt, "16", 2, 65535, {}, "synthetic Markov source: alphabet size"},
      {"data.synthetic.order", T::kInt, "2", 1, 4, {}, "synthetic Markov source: order (context length)"},
      {"data.synthetic.branching", T::kInt, "3", 1, 65535, {}, "synthetic Markov source: successors per context"},
      {"data.synthetic.length", T::kInt, "1000000", 1000, 1e10, {}, "synthetic Markov source: tokens generated"},
      {"data.images", T::kString, "", -1e300, 1e300, {}, "mnist: training images IDX file (raw or .gz)"},
      {"data.labels", T::kString, "", -1e300, 1e300, {}, "mnist: training labels IDX file (raw or .gz)"},
      {"data.test_images", T::kString, "", -1e300, 1e300, {}, "mnist: test images IDX file (empty: split data.images)"},
      {"data.test_labels", T::kString, "", -1e300, 1e300, {}, "mnist: test labels IDX file"},
      {"data.train_count", T::kInt, "0", 0, 1e12, {}, "split one file: the first N items train, the rest test (0: data.val_fraction)"},
      {"data.normalize", T::kBool, "true", -1e300, 1e300, {}, "images: per-channel mean/std of the training split"},
      {"data.augment.crop_pad", T::kInt, "0", 0, 64, {}, "images: random crop after zero padding by N pixels (0: off)"},
      {"data.augment.hflip", T::kBool, "false", -1e300, 1e300, {}, "images: random horizontal flip"},
      {"data.synthetic.classes", T::kInt, "10", 2, 1000, {}, "synthetic images: classes"},
      {"data.synthetic.channels", T::kInt, "1", 1, 16, {}, "synthetic images: channels"},
      {"data.synthetic.image_size", T::kInt, "16", 4, 256, {}, "synthetic images: height = width"},
      {"data.synthetic.train_images", T::kInt, "4000", 1, 1e8, {}, "synthetic images: training images"},
      {"data.synthetic.test_images", T::kInt, "1000", 1, 1e8, {}, "synthetic images: test images"},
      // Training loop
      {"train.batch_size", T::kInt, "16", 1, 1e7, {}, "sequences per micro-step (per rank)"},
      {"train.grad_accum", T::kInt, "1", 1, 1e6, {}, "micro-steps per optimizer step"},
      {"train.steps", T::kInt, "1500", 0, 1e12, {}, "optimizer steps"},
      {"train.eval_interval", T::kInt, "250", 1, 1e12, {}, "steps between validation evaluations"},
      {"train.eval_batches", T::kInt, "20", 1, 1e9, {}, "batches per validation evaluation"},
      {"train.log_interval", T::kInt, "10", 1, 1e12, {}, "steps between progress lines / metrics rows"},
      // Optimizer
      {"optim.name", T::kString, "adamw", -1e300, 1e300, {"sgd", "adam", "adamw"}, "optimizer"},
      {"optim.on_device", T::kString, "auto", -1e300, 1e300, {"auto", "off"},
       "device cuda: auto runs the optimizer on the GPU (no tensor parallelism, ZeRO-1 or parameter servers), "
       "so parameters, gradients and moments stay there and data-parallel ranks average "
       "gradients on the GPUs with NCCL; off keeps the optimizer on the host (parameters up and gradients down "
       "every micro-step, gradients reduced on the host)"},
      {"optim.lr", T::kFloat, "3e-3", 0, 1e6, {}, "peak learning rate"},
      {"optim.beta1", T::kFloat, "0.9", 0, 0.999999, {}, "Adam beta1"},
      {"optim.beta2", T::kFloat, "0.99", 0, 0.99999999, {}, "Adam beta2"},
      {"optim.eps", T::kFloat, "1e-8", 0, 1, {}, "Adam epsilon"},
      {"optim.weight_decay", T::kFloat, "0.1", 0, 1e6, {}, "decoupled weight decay (AdamW), on matrices and embeddings only"},
      {"optim.momentum", T::kFloat, "0.0", 0, 0.999999, {}, "SGD momentum"},
      {"optim.nesterov", T::kBool, "false", -1e300, 1e300, {}, "SGD Nesterov momentum"},
      {"optim.l1", T::kFloat, "0.0", 0, 1e6, {}, "L1 penalty added to the gradient (lambda * sign(w)), decayed tensors only"},
      {"optim.l2", T::kFloat, "0.0", 0, 1e6, {}, "L2 penalty added to the gradient (lambda * w), decayed tensors only"},
      {"optim.grad_clip", T::kFloat, "1.0", 0, 1e12, {}, "clip by global gradient norm (0: off)"},
      // Learning-rate schedule
      {"schedule.name", T::kString, "cosine", -1e300, 1e300, {"constant", "cosine", "step", "exponential"},
       "learning-rate schedule (all honour schedule.warmup)"},
      {"schedule.warmup", T::kInt, "50", 0, 1e12, {}, "linear warmup steps"},
      {"schedule.min_lr", T::kFloat, "3e-4", 0, 1e6, {}, "cosine: floor reached at decay_steps"},
      {"schedule.decay_steps", T::kInt, "0", 0, 1e12, {}, "cosine: step where the floor is reached (0: train.steps)"},
      {"schedule.step_size", T::kInt, "1000", 1, 1e12, {}, "step decay: steps between decays"},
      {"schedule.gamma", T::kFloat, "0.1", 0, 1, {}, "step / exponential decay factor"},
      // Data parallelism (the process count comes from the launcher: mpirun, srun, ringtrain launch)
      {"dist.transport", T::kString, "auto", -1e300, 1e300, {"auto", "mpi", "tcp", "shm"},
       "collective transport: auto is shm when every rank is on this host, else mpi under mpirun (when built with MPI), else tcp"},
      {"dist.bind", T::kString, "", -1e300, 1e300, {}, "tcp: local address or interface for data connections (empty: any)"},
      {"dist.deadline_s", T::kFloat, "300", 0.001, 1e9, {}, "seconds a collective waits for its peers before failing"},
      {"dist.algorithm", T::kString, "auto", -1e300, 1e300, {"auto", "ring", "halving_doubling", "tree"},
       "all-reduce algorithm (auto: by message size and world size)"},
      {"dist.bucket_mb", T::kFloat, "25", 0.0001, 1e6, {}, "gradient all-reduce bucket size in MB (2^20 bytes)"},
      {"dist.overlap", T::kBool, "true", -1e300, 1e300, {}, "start bucket all-reduces during backward (false: one all-reduce after it)"},
      {"dist.zero1", T::kBool, "false", -1e300, 1e300, {},
       "ZeRO-1: reduce-scatter gradients, each rank updates its shard of parameters and optimizer state, all-gather parameters"},
      // Parameter servers (sync.mode ps)
      {"sync.mode", T::kString, "auto", -1e300, 1e300, {"auto", "allreduce", "ps"},
       "gradient sync: allreduce (ring all-reduce data parallelism) or ps (parameter servers); auto is ps when "
       "servers are given (sync.ps_hosts or ringtrain launch --ps K)"},
      {"sync.ps_hosts", T::kString, "", -1e300, 1e300, {}, "parameter servers HOST:PORT,... in shard order (ringtrain ps --shard i/k)"},
      {"sync.consistency", T::kString, "bsp", -1e300, 1e300, {"bsp", "ssp", "asp"},
       "ps: bsp (one averaged update per step), ssp (at most sync.staleness steps ahead of the slowest worker), asp (apply each push)"},
      {"sync.staleness", T::kInt, "2", 0, 1e6, {}, "ssp: steps a worker may run ahead of the slowest (0: bsp)"},
      {"sync.token_file", T::kString, "", -1e300, 1e300, {}, "ps: file holding the shared token (empty: RINGTRAIN_TOKEN)"},
      // Tensor parallelism
      {"parallel.tensor", T::kInt, "1", 1, 1e6, {},
       "tensor-parallel group size T (GPT): T adjacent ranks split every layer; world size / T data-parallel groups"},
      // Checkpoints
      {"checkpoint.dir", T::kString, "", -1e300, 1e300, {}, "checkpoint root (empty: <run dir>/checkpoints)"},
      {"checkpoint.every_steps", T::kInt, "0", 0, 1e12, {}, "save every N optimizer steps (0: off; a final one is saved when any saving is on)"},
      {"checkpoint.every_minutes", T::kFloat, "0", 0, 1e9, {}, "save when this many minutes passed since the last save (0: off)"},
      {"checkpoint.keep", T::kInt, "3", 1, 1e6, {}, "complete checkpoints kept (oldest removed first)"},
      {"checkpoint.async", T::kBool, "false", -1e300, 1e300, {},
       "copy the state to memory and write it in a background thread while training continues"},
      // Generation (used by `generate` defaults)
      {"sample.temperature", T::kFloat, "1.0", 1e-6, 100, {}, "sampling temperature"},
      {"sample.top_k", T::kInt, "0", 0, 16777216, {}, "top-k sampling (0: off)"},
  };
  return schema;
}

}  // namespace ringtrain
