"""What every layer may raise or return, with no layer above it: the setup error and exit codes."""

EXIT_OK = 0
EXIT_FAILED = 1  # systemd restarts the service (Restart=on-failure)
EXIT_SETUP = 2  # a configuration error: systemd does not restart on it (RestartPreventExitStatus=2)


from typing import Optional


class SetupError(Exception):
    """The link cannot work as configured on this machine; retrying will not help.

    ``key`` names the config key at fault (``bigquery.service_account_json``):
    the caller holding the config puts the file and line in front of it
    (``Config.located``), as a ConfigError does.
    """

    def __init__(self, message: str, key: Optional[str] = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.problem = message
