"""Closed hours -> BigQuery: the hour catalogue, the ledger, the BigQuery adapter, the uploader, retention."""
