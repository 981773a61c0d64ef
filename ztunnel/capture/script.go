package capture

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Saved is what iptables-save printed for a namespace, reduced to what
// reconciling needs: per table, the user-defined chains and every rule.
type Saved struct {
	Tables map[string]*SavedTable
}

// SavedTable is one table of iptables-save output.
type SavedTable struct {
	Chains []string    // user-defined chains (a built-in chain has a policy, not "-")
	Rules  []SavedRule // in order
}

// SavedRule is one "-A <Chain> <Spec>" line.
type SavedRule struct {
	Chain string
	Spec  string
}

// Target is the chain the rule jumps (-j) or goes (-g) to, or its target
// extension (RETURN, REDIRECT, ...); "" if it has none.
func (r SavedRule) Target() string {
	words := splitWords(r.Spec)
	for i, w := range words {
		if (w == "-j" || w == "--jump" || w == "-g" || w == "--goto") && i+1 < len(words) {
			return words[i+1]
		}
	}
	return ""
}

// ParseSave reads iptables-save output.
func ParseSave(out string) (Saved, error) {
	s := Saved{Tables: map[string]*SavedTable{}}
	var cur *SavedTable
	for n, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || line == "COMMIT":
		case strings.HasPrefix(line, "*"):
			cur = &SavedTable{}
			s.Tables[line[1:]] = cur
		case cur == nil:
			return Saved{}, fmt.Errorf("iptables-save line %d outside a table: %q", n+1, line)
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) >= 2 && f[1] == "-" {
				cur.Chains = append(cur.Chains, f[0])
			}
		case strings.HasPrefix(line, "-A "):
			chain, spec, _ := strings.Cut(line[len("-A "):], " ")
			cur.Rules = append(cur.Rules, SavedRule{Chain: chain, Spec: spec})
		default:
			return Saved{}, fmt.Errorf("iptables-save line %d not understood: %q", n+1, line)
		}
	}
	return s, nil
}

// Script returns the iptables-restore --noflush input that takes a
// namespace whose rules are cur to exactly r: our chains hold r's rules,
// each hook has exactly one "-j <chain>" at the place it already had or
// else first, and no other CAIRN_ chain or jump to one is left. Applied to
// a namespace that is already right, it rewrites our chains with the same
// rules (atomically, per table) and changes nothing else, which is what
// makes applying idempotent. It returns "" when there is nothing to do.
//
// Nothing outside our chains is touched except rules jumping into them.
func (r Ruleset) Script(cur Saved) string {
	names := map[string]bool{}
	for _, t := range r.Tables {
		names[t.Name] = true
	}
	for name, t := range cur.Tables {
		if t.ours() {
			names[name] = true
		}
	}
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(names)) {
		var want Table
		for _, t := range r.Tables {
			if t.Name == name {
				want = t
			}
		}
		have := cur.Tables[name]
		if have == nil {
			have = &SavedTable{}
		}
		writeTable(&b, name, want, have)
	}
	return b.String()
}

// Applied reports whether cur holds exactly r: our chains with r's rules
// and nothing else of ours, one plain jump into each from its hook. Then
// Script would only rewrite the same rules.
func (r Ruleset) Applied(cur Saved) bool {
	for _, line := range strings.Split(r.Script(cur), "\n") {
		switch {
		case line == "", line == "COMMIT", strings.HasPrefix(line, "*"), strings.HasPrefix(line, ":"),
			strings.HasPrefix(line, "-A "+ChainPrefix):
		default:
			return false // a jump, a deletion, a stale chain
		}
	}
	for _, t := range r.Tables {
		for _, c := range t.Chains {
			if !slices.Contains(cur.Chains(), t.Name+"/"+c.Name) || !slices.Equal(cur.Rules(t.Name, c.Name), c.Rules) {
				return false
			}
		}
	}
	return true
}

// RemoveScript returns the iptables-restore --noflush input that deletes
// every CAIRN_ chain of cur and every rule jumping to one, and nothing
// else; "" if there is none.
func RemoveScript(cur Saved) string { return Ruleset{}.Script(cur) }

func writeTable(b *strings.Builder, name string, want Table, have *SavedTable) {
	wanted := map[string]Chain{}
	for _, c := range want.Chains {
		wanted[c.Name] = c
	}
	var lines []string
	// Declaring a chain creates it, or flushes it if it exists: our
	// chains start empty and are refilled below.
	for _, c := range want.Chains {
		lines = append(lines, ":"+c.Name+" - [0:0]")
	}
	// Jumps into our chains from chains that are not ours: keep the first
	// plain jump from the right hook, delete the rest.
	kept := map[string]bool{}
	for _, rule := range have.Rules {
		target := rule.Target()
		if !isOurs(target) || isOurs(rule.Chain) {
			continue
		}
		c, ok := wanted[target]
		if ok && rule.Chain == c.Hook && rule.Spec == "-j "+c.Name && !kept[c.Name] {
			kept[c.Name] = true
			continue
		}
		lines = append(lines, "-D "+rule.Chain+" "+rule.Spec)
	}
	// Chains of ours that should not exist: empty them first (they may
	// jump to each other), then delete them.
	var stale []string
	for _, c := range have.Chains {
		if _, ok := wanted[c]; isOurs(c) && !ok {
			stale = append(stale, c)
		}
	}
	for _, c := range stale {
		lines = append(lines, "-F "+c)
	}
	for _, c := range stale {
		lines = append(lines, "-X "+c)
	}
	for _, c := range want.Chains {
		for _, rule := range c.Rules {
			lines = append(lines, "-A "+c.Name+" "+rule)
		}
	}
	for _, c := range want.Chains {
		if !kept[c.Name] {
			lines = append(lines, "-I "+c.Hook+" 1 -j "+c.Name)
		}
	}
	if len(want.Chains) == 0 && len(lines) == 0 {
		return
	}
	b.WriteString("*" + name + "\n")
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	b.WriteString("COMMIT\n")
}

// ours reports whether the table holds any chain of ours or a jump to one.
func (t *SavedTable) ours() bool {
	return slices.ContainsFunc(t.Chains, isOurs) ||
		slices.ContainsFunc(t.Rules, func(r SavedRule) bool { return isOurs(r.Target()) })
}

func isOurs(chain string) bool { return strings.HasPrefix(chain, ChainPrefix) }

// Chains lists our chains in cur as "table/chain", and Jumps the rules
// that jump to them from other chains as "table/chain spec". Tests and
// debug pages use them to show what capture left in a namespace.
func (s Saved) Chains() []string {
	var out []string
	for name, t := range s.Tables {
		for _, c := range t.Chains {
			if isOurs(c) {
				out = append(out, name+"/"+c)
			}
		}
	}
	slices.Sort(out)
	return out
}

// Jumps: see Chains.
func (s Saved) Jumps() []string {
	var out []string
	for name, t := range s.Tables {
		for _, r := range t.Rules {
			if isOurs(r.Target()) && !isOurs(r.Chain) {
				out = append(out, name+"/"+r.Chain+" "+r.Spec)
			}
		}
	}
	slices.Sort(out)
	return out
}

// Rules lists the rule specs of a chain, in order; nil if it has none.
func (s Saved) Rules(table, chain string) []string {
	t := s.Tables[table]
	if t == nil {
		return nil
	}
	var out []string
	for _, r := range t.Rules {
		if r.Chain == chain {
			out = append(out, r.Spec)
		}
	}
	return out
}

// splitWords splits a rule spec into words the way iptables-restore does:
// at spaces, except inside double quotes (comments), where \" is a quote.
func splitWords(s string) []string {
	var words []string
	var w strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\\' && i+1 < len(s):
			i++
			w.WriteByte(s[i])
		case c == '"':
			quoted = !quoted
			inWord = true
		case c == ' ' && !quoted:
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

// restoreLine matches where iptables-restore says it failed: "line 7
// failed" (on a rule it could not apply) or "Error occurred at line: 7"
// (on one it could not parse).
var restoreLine = regexp.MustCompile(`line:? (\d+)`)

// failedLine returns the script line iptables-restore complained about, so
// the error shows the rule; "" if it named none. The nft backend checks
// some things (a jump to a missing chain) only when the table is
// committed, and then names the COMMIT line: that becomes the table.
func failedLine(stderr, script string) string {
	m := restoreLine.FindStringSubmatch(stderr)
	if m == nil {
		return ""
	}
	n, err := strconv.Atoi(m[1])
	lines := strings.Split(script, "\n")
	if err != nil || n < 1 || n > len(lines) {
		return ""
	}
	if lines[n-1] != "COMMIT" {
		return "line " + m[1] + ": " + lines[n-1]
	}
	for i := n - 2; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "*") {
			return "line " + m[1] + ": COMMIT of table " + lines[i][1:]
		}
	}
	return "line " + m[1] + ": COMMIT"
}
