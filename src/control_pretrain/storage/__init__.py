"""Where dataset bytes live: Azure Blob transport, the verified local cache, folder upload/download."""
