"""The runtime: the public ops, their plans and policies, context parallelism, the kernel path;
later the autograd functions and the integrations into other libraries."""
