"""Release folders in the Hub layouts, model cards, publishing."""
