// Package cairn is the root of the Cairn module. It holds no code of its own,
// only repository-wide tests: the import layering and the freshness of
// generated code.
package cairn
