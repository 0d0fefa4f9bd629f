"""Each number declared once (registry), its formula (formulas), and a cell's numbers from its judged rows (cell)."""
