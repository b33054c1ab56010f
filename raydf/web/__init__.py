"""The web page `raydf.serve` shows at `/` (plain HTML and JavaScript, no build step)."""
