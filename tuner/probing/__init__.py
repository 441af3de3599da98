"""The CLI's side of `tuner probe`: pre-flight and running a mode (run), its live progress
(progress), and the knob table's signs written for the probe (signs -> probes/signs.json).
The probe itself is probes/, which imports nothing of tuner above tuner/host/."""
