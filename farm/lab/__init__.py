"""The virtual device lab: phones (our adbd + the real adb server) and boards (real sshd) without hardware.

``from farm.lab import Lab``; users get it as ``farm lab up``. See farm/lab/lab.py.
"""

from farm.lab.lab import Lab, lab_profile, tools_missing

__all__ = ["Lab", "lab_profile", "tools_missing"]
