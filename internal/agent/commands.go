package agent

import (
	"strconv"
	"strings"
)

// annotation is an ::error::, ::warning:: or ::notice:: workflow command.
type annotation struct {
	level, message, file, title string
	line                        int
}

// commands interprets the workflow commands steps print
// (https://docs.github.com/actions/reference/workflow-commands-for-github-actions):
// ::add-mask::, ::group::/::endgroup:: (left in the log, where the platform
// renders them), ::error::/::warning::/::notice:: (kept as annotations),
// ::debug:: and ::stop-commands::.
type commands struct {
	mask    *Masker
	stopTok string // while set, commands are ignored until ::<stopTok>::
}

// process handles line if it is a workflow command; it returns the
// annotation the line carries, if any. The line itself stays in the log
// (masked like any other: an ::add-mask:: line shows ***).
func (c *commands) process(line string) (*annotation, bool) {
	t := strings.TrimLeft(line, " \t")
	if !strings.HasPrefix(t, "::") {
		return nil, false
	}
	rest := t[2:]
	head, msg, ok := strings.Cut(rest, "::")
	if !ok {
		return nil, false
	}
	name, params, _ := strings.Cut(head, " ")
	if c.stopTok != "" {
		if name == c.stopTok && params == "" {
			c.stopTok = ""
			return nil, true
		}
		return nil, false
	}
	switch name {
	case "add-mask":
		c.mask.Add(unescapeData(msg))
		return nil, true
	case "stop-commands":
		if msg != "" {
			c.stopTok = msg
		}
		return nil, true
	case "error", "warning", "notice":
		a := &annotation{level: name, message: unescapeData(msg)}
		for _, kv := range strings.Split(params, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok {
				continue
			}
			v = unescapeProperty(v)
			switch k {
			case "file":
				a.file = v
			case "line":
				a.line, _ = strconv.Atoi(v)
			case "title":
				a.title = v
			}
		}
		return a, true
	case "group", "endgroup", "debug":
		return nil, true
	}
	return nil, false
}

// unescapeData undoes the escaping of a command's message.
func unescapeData(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	return strings.NewReplacer("%0D", "\r", "%0A", "\n", "%25", "%").Replace(s)
}

// unescapeProperty undoes the escaping of a command's property value.
func unescapeProperty(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	return strings.NewReplacer("%0D", "\r", "%0A", "\n", "%3A", ":", "%2C", ",", "%25", "%").Replace(s)
}
