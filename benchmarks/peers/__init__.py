"""Peer DP libraries run side by side with coopdp, each in its own venv, as subprocesses.

``setup.sh`` installs them; ``run_<peer>.py`` answer one request (``child.py``'s
protocol) with only the standard library and the peer's own packages, since our
package and its Polars cannot be imported in their venvs.
"""
