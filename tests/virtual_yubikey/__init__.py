"""A virtual YubiKey 5 (PIV applet) for tests: served to pcscd through vsmartcard's vpcd.

`scripts/virtual-yubikey up DIR` brings it up; `fixture.py` has the pytest fixture.
"""
