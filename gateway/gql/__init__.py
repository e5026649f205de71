"""The GraphQL API: types, resolvers and the schema with its guardrails."""
