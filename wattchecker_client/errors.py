"""What every layer may raise or return, with no layer above it: the setup error and exit codes."""

EXIT_OK = 0
EXIT_FAILED = 1  # systemd restarts the service (Restart=on-failure)
EXIT_SETUP = 2  # a configuration error: systemd does not restart on it (RestartPreventExitStatus=2)


class SetupError(Exception):
    """The link cannot work as configured on this machine; retrying will not help."""
