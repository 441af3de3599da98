"""`tuner diagnose`: a running service's processes and sockets (service), the model's
verdict over kernel, process and application limits (evaluate), its fixes (fixes), its
text (render) and `--watch` (watch).  Library entry point:
`tuner.diagnose.evaluate.diagnose(pids=..., port=..., unit=..., target=...)`."""
