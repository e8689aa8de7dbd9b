"""fleet lab: real Debian 12 test hosts (systemd + sshd in docker) on this machine.

Run `python3 -m lab --help` from the repository root; see lab/README.md.
"""
