"""The leaderboard, built from run folders alone: tables, intervals, figures, the page. Never imports ``bench.run``."""
