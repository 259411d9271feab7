"""The Textual console app of the live environment: a thin shell over the
engines in `converters/`, rendering their one event stream."""
