"""The Ray layer: cluster connection, one task per fold, Ray Data soft-vote inference. Every `import ray` lives here."""
