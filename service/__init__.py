"""`herd serve`: an OpenAI-compatible Batch API (files, batches, models) over herd's jobs.

A layer above jobs/ and herd/, beside the command line: every batch is a herd job with its own output
under the service's root, so exactly-once commits, the lease and resume hold for it.
"""
