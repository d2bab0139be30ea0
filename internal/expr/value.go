package expr

import (
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// filtered is the result of an object filter (a.*): an array whose further
// property and index accesses apply to each element.
type filtered []any

// kind is the type of a value as the expression language sees it.
type kind int

const (
	kindNull kind = iota
	kindBool
	kindNumber
	kindString
	kindArray
	kindObject
)

// norm converts a value of a common Go type to the JSON-like types the
// evaluator works on. Types it does not know read as null.
func norm(v any) any {
	switch x := v.(type) {
	case nil, bool, float64, string, []any, map[string]any, filtered:
		return v
	case int:
		return float64(x)
	case int8:
		return float64(x)
	case int16:
		return float64(x)
	case int32:
		return float64(x)
	case int64:
		return float64(x)
	case uint:
		return float64(x)
	case uint8:
		return float64(x)
	case uint16:
		return float64(x)
	case uint32:
		return float64(x)
	case uint64:
		return float64(x)
	case float32:
		return float64(x)
	case map[string]string:
		m := make(map[string]any, len(x))
		for k, s := range x {
			m[k] = s
		}
		return m
	case []string:
		a := make([]any, len(x))
		for i, s := range x {
			a[i] = s
		}
		return a
	case []map[string]any:
		a := make([]any, len(x))
		for i, m := range x {
			a[i] = m
		}
		return a
	case map[string]map[string]any:
		m := make(map[string]any, len(x))
		for k, s := range x {
			m[k] = s
		}
		return m
	}
	return nil
}

func kindOf(v any) kind {
	switch v.(type) {
	case bool:
		return kindBool
	case float64:
		return kindNumber
	case string:
		return kindString
	case []any, filtered:
		return kindArray
	case map[string]any:
		return kindObject
	}
	return kindNull
}

// elems returns the elements of an array value.
func elems(v any) []any {
	switch a := v.(type) {
	case []any:
		return a
	case filtered:
		return a
	}
	return nil
}

// export turns evaluator values into the public JSON-like types.
func export(v any) any {
	switch x := v.(type) {
	case filtered:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = export(e)
		}
		return out
	}
	return v
}

// truthy reports GitHub's truthiness: null, false, 0, NaN and "" are false;
// everything else, arrays and objects included, is true.
func truthy(v any) bool {
	switch x := v.(type) {
	case nil:
		return false
	case bool:
		return x
	case float64:
		return x != 0 && !math.IsNaN(x)
	case string:
		return x != ""
	}
	return true
}

// Truthy reports whether a value is true in a condition.
func Truthy(v any) bool { return truthy(norm(v)) }

// ToString converts a value to a string as GitHub does when a value is put
// into text: null is empty, booleans are true and false, numbers use at most
// 15 significant digits, arrays and objects are "Array" and "Object".
func ToString(v any) string { return toString(norm(v)) }

func toString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case bool:
		if x {
			return "true"
		}
		return "false"
	case float64:
		return formatNumber(x)
	case string:
		return x
	case []any, filtered:
		return "Array"
	case map[string]any:
		return "Object"
	}
	return ""
}

// formatNumber formats like .NET's "G15", which GitHub uses.
func formatNumber(f float64) string {
	switch {
	case f == 0:
		return "0"
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	return strings.Replace(strconv.FormatFloat(f, 'g', 15, 64), "e", "E", 1)
}

// toNumber converts a value to a number: null is 0, booleans 1 and 0,
// strings are parsed (empty or white space is 0, anything not a number is
// NaN), arrays and objects are NaN.
func toNumber(v any) float64 {
	switch x := v.(type) {
	case nil:
		return 0
	case bool:
		if x {
			return 1
		}
		return 0
	case float64:
		return x
	case string:
		return parseNumber(x)
	}
	return math.NaN()
}

// parseNumber parses a string the way GitHub converts strings to numbers:
// surrounding white space is ignored, the empty string is 0, 0x… is
// hexadecimal, 0o… is octal, otherwise a decimal number with an optional
// sign, fraction and exponent. Anything else is NaN.
func parseNumber(s string) float64 {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0
	}
	if len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o') {
		base := 16
		if s[1] == 'o' {
			base = 8
		}
		n, err := strconv.ParseUint(s[2:], base, 64)
		if err != nil {
			return math.NaN()
		}
		return float64(n)
	}
	if !isDecimal(s) {
		return math.NaN()
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		// Out of range: ParseFloat returns ±Inf with the error.
		if math.IsInf(f, 0) {
			return f
		}
		return math.NaN()
	}
	return f
}

// isDecimal reports whether s is [+-]digits[.digits][e[+-]digits] (digits
// on at least one side of the point).
func isDecimal(s string) bool {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	digits := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
		digits++
	}
	if i < len(s) && s[i] == '.' {
		i++
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			digits++
		}
	}
	if digits == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		exp := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			exp++
		}
		if exp == 0 {
			return false
		}
	}
	return i == len(s)
}

// coerce brings two values of different kinds to a common kind for
// comparison: null and booleans become numbers, and a string compared with
// a number becomes a number. Arrays and objects are never converted.
func coerce(l, r any) (any, any) {
	lk, rk := kindOf(l), kindOf(r)
	if lk == rk {
		return l, r
	}
	switch lk {
	case kindNumber:
		if rk == kindString {
			return l, toNumber(r)
		}
	case kindString:
		if rk == kindNumber {
			return toNumber(l), r
		}
	case kindNull, kindBool:
		return coerce(toNumber(l), r)
	}
	switch rk {
	case kindNull, kindBool:
		return coerce(l, toNumber(r))
	}
	return l, r
}

// equals is GitHub's loose equality.
func equals(l, r any) bool {
	l, r = coerce(l, r)
	if kindOf(l) != kindOf(r) {
		return false
	}
	switch x := l.(type) {
	case nil:
		return true
	case float64:
		y := r.(float64)
		return x == y // NaN is never equal
	case string:
		return foldUpper(x) == foldUpper(r.(string))
	case bool:
		return x == r.(bool)
	}
	return sameInstance(l, r)
}

// sameInstance reports whether two arrays or objects are the same value
// (GitHub compares them by reference).
func sameInstance(l, r any) bool {
	lv, rv := reflect.ValueOf(l), reflect.ValueOf(r)
	if lv.Kind() != rv.Kind() {
		return false
	}
	switch lv.Kind() {
	case reflect.Map:
		return lv.UnsafePointer() == rv.UnsafePointer()
	case reflect.Slice:
		if _, ok := l.(filtered); ok {
			return false // a filter makes a new array every time
		}
		return lv.Len() == rv.Len() && lv.UnsafePointer() == rv.UnsafePointer()
	}
	return false
}

// less is GitHub's <: false whenever the values are not ordered (different
// kinds after coercion, NaN, arrays, objects, null).
func less(l, r any) bool {
	l, r = coerce(l, r)
	if kindOf(l) != kindOf(r) {
		return false
	}
	switch x := l.(type) {
	case float64:
		return x < r.(float64)
	case string:
		return foldUpper(x) < foldUpper(r.(string))
	case bool:
		return !x && r.(bool)
	}
	return false
}

// greater is GitHub's >, with the same rules as less.
func greater(l, r any) bool {
	l, r = coerce(l, r)
	if kindOf(l) != kindOf(r) {
		return false
	}
	switch x := l.(type) {
	case float64:
		return x > r.(float64)
	case string:
		return foldUpper(x) > foldUpper(r.(string))
	case bool:
		return x && !r.(bool)
	}
	return false
}

// foldUpper upper-cases s for case-insensitive comparison (ordinal, ignore
// case), leaving the dotless ı alone as GitHub does.
func foldUpper(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToUpper(s)
	}
	return strings.Map(func(r rune) rune {
		if r == 'ı' {
			return r
		}
		return unicode.ToUpper(r)
	}, s)
}

// property reads a property of an object case-insensitively. The bool is
// false when the object has no such property.
func property(m map[string]any, name string) (any, bool) {
	if v, ok := m[name]; ok {
		return norm(v), true
	}
	var (
		best  string
		found bool
		val   any
	)
	for k, v := range m {
		if strings.EqualFold(k, name) && (!found || k < best) {
			best, found, val = k, true, v
		}
	}
	if !found {
		return nil, false
	}
	return norm(val), true
}

// sortedKeys returns the keys of m in order, for deterministic iteration.
func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
