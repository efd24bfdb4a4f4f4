"""A command's options on their way to a job: parsed here, then validated (bot.validation)."""
