//! The libtorch backend: the same integer network with int8 matrix products (CPU or CUDA).
