"""The read model itself: its columns, the statements that apply events to it, and its positions.

Everything that writes the read model goes through here, whoever reads the
records: the consumer (`order_history.consumer`), `rebuild` and `dlq replay`
(`order_history.ops`). A batch's rows and the positions it reached are written
in one transaction (`apply.py`), so a position never runs ahead of its rows.
"""
