"""Pure domain: resources, policies, safety rules, pricing. No I/O, no adapters."""
