"""Run reports (HTML + JSON) rendered with the package's Jinja2 templates (autoescaped)."""
