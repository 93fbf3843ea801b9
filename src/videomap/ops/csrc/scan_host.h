// The host entry points of the CPU selective scan, for the Python bindings (bindings.cpp).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <torch/extension.h>

namespace videomap_scan {

std::vector<at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                                 const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& init, bool softplus, bool save_checkpoints,
                                 bool reverse, const std::optional<at::Tensor>& out_buffer, double scale,
                                 bool accumulate);
std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                                 const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                                 const at::Tensor& ckpt, const std::optional<at::Tensor>& dout,
                                 const std::optional<at::Tensor>& dlast, bool softplus, bool want_dB, bool want_dC,
                                 bool want_dinit, bool want_out, bool reverse);
// The channels-last inference forward: u, delta, z, out (B, L, E) and B, C (B, L, G, N), channels contiguous,
// any batch and position strides; returns out.
at::Tensor scan_fwd_last(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                         const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                         const std::optional<at::Tensor>& bias, bool softplus, bool reverse,
                         const std::optional<at::Tensor>& out_buffer, double scale, bool accumulate);
bool has_avx512();
std::string isa();

}  // namespace videomap_scan
