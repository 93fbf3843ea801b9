// The Python module of the CPU kernels: the selective scan (selective_scan_cpu.cpp) and the depthwise causal
// conv (causal_conv_cpu.cpp), built into one extension.
#include <torch/extension.h>

#include "scan_host.h"

// Defined in causal_conv_cpu.cpp.
torch::Tensor causal_conv1d_fwd(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias, bool reverse);
torch::Tensor causal_conv1d_fwd_last(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias, bool silu,
                                     bool reverse);
std::vector<torch::Tensor> causal_conv1d_bwd(torch::Tensor x, torch::Tensor w, torch::Tensor dout, bool reverse);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("causal_conv1d_fwd", &causal_conv1d_fwd, "depthwise causal conv1d over (B, E, L) rows");
  m.def("causal_conv1d_fwd_last", &causal_conv1d_fwd_last,
        "depthwise causal conv1d (optionally + SiLU) of a channels-last (B, L, E) tensor, for inference");
  m.def("causal_conv1d_bwd", &causal_conv1d_bwd, "its backward: (dx, dweight, dbias)");
  m.def("fwd", &videomap_scan::scan_fwd,
        "selective scan forward (optionally reversed in time): (out, last_state, checkpoints)");
  m.def("fwd_last", &videomap_scan::scan_fwd_last,
        "channels-last selective scan forward for inference, (B, L, E) in and out (optionally reversed, "
        "scaled, accumulated into out)");
  m.def("bwd", &videomap_scan::scan_bwd,
        "selective scan backward: (du, ddelta, dA per batch, dB, dC, dD per batch, dz, ddelta_bias per batch, "
        "dinitial_state, the gated output when asked for)");
  m.def("has_avx512", &videomap_scan::has_avx512, "whether the fp32 path was compiled with AVX-512");
  m.def("isa", &videomap_scan::isa, "the instruction-set variant of the fp32 path: avx512, avx2 or generic");
}
