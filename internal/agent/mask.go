package agent

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Mask is what a masked value is replaced with.
const Mask = "***"

// minPieceLen is the shortest piece of a multi-line secret (one of its
// lines) or derived form that is masked on its own. Shorter pieces — a lone
// "}" of a JSON key file, say — would blank out unrelated text everywhere.
// The whole secret is always masked, whatever its length.
const minPieceLen = 3

// Masker replaces secret values, and their encoded forms, with Mask. It is
// safe for concurrent use; values can be added while output flows (the
// ::add-mask:: command).
type Masker struct {
	mu      sync.RWMutex
	values  map[string]bool
	ordered []string // longest first, so a secret containing another is masked whole
	longest int
}

// NewMasker returns a masker for values (empty values are ignored).
func NewMasker(values ...string) *Masker {
	m := &Masker{values: map[string]bool{}}
	for _, v := range values {
		m.Add(v)
	}
	return m
}

// Add masks v from now on, together with its base64 (standard and URL
// alphabet, with and without padding), URL-encoded and JSON-escaped forms,
// and, for a multi-line value, each of its lines.
func (m *Masker) Add(v string) {
	v = strings.TrimSuffix(v, "\n")
	v = strings.TrimSuffix(v, "\r")
	if strings.TrimSpace(v) == "" {
		return
	}
	forms := []string{v}
	if strings.ContainsAny(v, "\r\n") {
		for _, line := range strings.Split(v, "\n") {
			line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
			if len(line) >= minPieceLen {
				forms = append(forms, line)
			}
		}
	}
	derived := []string{
		base64.StdEncoding.EncodeToString([]byte(v)),
		base64.RawStdEncoding.EncodeToString([]byte(v)),
		base64.URLEncoding.EncodeToString([]byte(v)),
		base64.RawURLEncoding.EncodeToString([]byte(v)),
		url.QueryEscape(v),
		url.PathEscape(v),
	}
	if j, err := json.Marshal(v); err == nil {
		derived = append(derived, string(j[1:len(j)-1]))
	}
	for _, d := range derived {
		if len(d) >= minPieceLen {
			forms = append(forms, d)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := false
	for _, f := range forms {
		if f == "" || m.values[f] {
			continue
		}
		m.values[f] = true
		changed = true
	}
	if !changed {
		return
	}
	m.ordered = m.ordered[:0]
	for f := range m.values {
		m.ordered = append(m.ordered, f)
	}
	sort.Slice(m.ordered, func(i, j int) bool {
		if len(m.ordered[i]) != len(m.ordered[j]) {
			return len(m.ordered[i]) > len(m.ordered[j])
		}
		return m.ordered[i] < m.ordered[j]
	})
	m.longest = len(m.ordered[0])
}

// Longest is the length of the longest masked form (0 without any): a
// stream must hold back that many bytes minus one before it can be sure no
// masked value straddles its cut.
func (m *Masker) Longest() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.longest
}

// Replace returns s with every masked form replaced by Mask.
func (m *Masker) Replace(s string) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if len(m.ordered) == 0 {
		return s
	}
	for _, v := range m.ordered {
		if strings.Contains(s, v) {
			s = strings.ReplaceAll(s, v, Mask)
		}
	}
	return s
}

// SafeCut returns the largest cut ≤ len(s)-(Longest()-1) such that no
// occurrence of a masked form in s starts before the cut and ends after it.
// Text before the cut can be masked and sent; the rest must wait for more
// input, because a secret may continue in the next write.
func (m *Masker) SafeCut(s string) int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	cut := len(s)
	if m.longest > 1 {
		cut = max(len(s)-(m.longest-1), 0)
	}
	for {
		moved := false
		for _, v := range m.ordered {
			// Any occurrence starting in [cut-len(v)+1, cut) straddles.
			from := max(cut-len(v)+1, 0)
			to := min(cut+len(v)-1, len(s))
			if from >= to {
				continue
			}
			if i := strings.Index(s[from:to], v); i >= 0 && from+i < cut {
				cut = from + i
				moved = true
			}
		}
		if !moved {
			return cut
		}
	}
}
