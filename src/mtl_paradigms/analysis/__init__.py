"""Result analysis: tables, figures and the claims table. Notebooks call these."""
