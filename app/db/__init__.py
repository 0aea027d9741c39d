"""SQL only: async functions taking an asyncpg connection first; they never begin or commit."""
