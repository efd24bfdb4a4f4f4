"""The bot's link to its engines: the engine child process and its bearer token."""
