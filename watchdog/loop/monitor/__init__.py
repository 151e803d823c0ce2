"""The monitor: window metrics per slice, drift against the active student's reference, weak slices.

The numbers are computed in a child process (`worker`); the serving process only stores
and exports what comes back.
"""
