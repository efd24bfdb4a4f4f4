"""The Discord side: one cog per feature (``cogs``), the flows behind them, embeds and components."""
