"""The federation's math and messages: client rules, aggregation, the wire, records, client state."""
