"""tuner's bottom layer: stdlib-level readers of the kernel (the host's /proc and /sys in
procfs, one process's in procpid, sock_diag, network namespaces, local addresses), the
connection arithmetic the probe and the model share, the numbers' format and the exit
codes.  Nothing here imports anything above it (tests/test_layers.py); the probe's forked
workers import these modules, so this package's __init__ imports nothing."""
