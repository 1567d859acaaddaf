"""QEMU: probing, command-line profiles, VM lifecycle."""
