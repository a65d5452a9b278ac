"""The graph compiler to LLVM native kernels (registers backend \"llvm\"): see issue 5."""
