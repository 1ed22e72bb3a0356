"""Project > Network > Port Forwards: the panel, its table, forms and views,
and the Port Forwards tab of the instance detail page."""
