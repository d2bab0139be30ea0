package agent

import (
	"fmt"
	"os"
	"strings"
)

// maxCommandFile bounds what a step may write to GITHUB_ENV or GITHUB_OUTPUT.
const maxCommandFile = 4 << 20

// parseKeyValueFile reads a GITHUB_ENV or GITHUB_OUTPUT file: lines of
// NAME=value, or NAME<<DELIMITER, the value's lines, then DELIMITER alone
// on a line. Later assignments win.
func parseKeyValueFile(path string) (map[string]string, []string, error) {
	data, err := readIfAny(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(data) > maxCommandFile {
		return nil, nil, fmt.Errorf("%s is larger than %d bytes", path, maxCommandFile)
	}
	return parseKeyValues(path, string(data))
}

// parseKeyValues parses the content of a GITHUB_ENV or GITHUB_OUTPUT file;
// it returns the values and the names in the order they were first set.
func parseKeyValues(name, s string) (map[string]string, []string, error) {
	out := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := out[k]; !ok {
			order = append(order, k)
		}
		out[k] = v
	}
	lines := strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if strings.TrimSpace(line) == "" {
			continue
		}
		eq := strings.IndexByte(line, '=')
		hd := strings.Index(line, "<<")
		switch {
		case hd > 0 && (eq < 0 || hd < eq):
			key, delim := line[:hd], line[hd+2:]
			if err := checkName(key); err != nil {
				return nil, nil, fmt.Errorf("%s line %d: %w", name, i+1, err)
			}
			if delim == "" {
				return nil, nil, fmt.Errorf("%s line %d: %q has an empty delimiter", name, i+1, key)
			}
			var val []string
			closed := false
			for i++; i < len(lines); i++ {
				if lines[i] == delim {
					closed = true
					break
				}
				val = append(val, lines[i])
			}
			if !closed {
				return nil, nil, fmt.Errorf("%s: the value of %q never ends: no line %q follows it", name, key, delim)
			}
			set(key, strings.Join(val, "\n"))
		case eq > 0:
			key := line[:eq]
			if err := checkName(key); err != nil {
				return nil, nil, fmt.Errorf("%s line %d: %w", name, i+1, err)
			}
			set(key, line[eq+1:])
		default:
			return nil, nil, fmt.Errorf("%s line %d: %q is neither NAME=value nor NAME<<DELIMITER", name, i+1, truncate(line, 60))
		}
	}
	return out, order, nil
}

func checkName(k string) error {
	if k == "" || strings.ContainsAny(k, " \t\x00") {
		return fmt.Errorf("%q is not a valid name", k)
	}
	return nil
}

// readPathFile reads a GITHUB_PATH file: one directory per line.
func readPathFile(path string) ([]string, error) {
	data, err := readIfAny(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	var dirs []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			dirs = append(dirs, l)
		}
	}
	return dirs, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// readIfAny reads a step file; a missing or empty one reads as nothing
// (a stat is cheaper than an open, and most steps write none of them).
func readIfAny(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if fi.Size() == 0 {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return data, nil
}
