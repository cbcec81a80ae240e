// Writes the table `go_strings::tests` checks `strings.replace_n` against: Go's own
// strings.NewReplacer, which OPA's builtin calls with the pattern object's keys in order.
//
//	go run . > ../../src/go_strings/replacer_truth.tsv
//
// Each line: the pairs (JSON), the string (JSON), Go's result (JSON), or `invalid` where Go's
// bytes are no UTF-8. The cases are drawn from a fixed seed, so the table is the same each run.
package main

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"unicode/utf8"
)

var keys = []string{"", "a", "b", "ab", "ba", "aa", "aab", "bba", "é", "aé", "x", "abc", "bc", "c", "ε"}
var values = []string{"", "X", "Y", "YY", "a", "b", "bX", "é", "-", "ab"}
var letters = []string{"a", "b", "c", "é", "x", "ε", " "}

func main() {
	r := rand.New(rand.NewSource(20261206))
	for n := 0; n < 600; n++ {
		pattern := map[string]string{}
		for k := r.Intn(5); k >= 0; k-- {
			pattern[keys[r.Intn(len(keys))]] = values[r.Intn(len(values))]
		}
		var sorted []string
		for k := range pattern {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		var oldnew []string
		var pairs [][2]string
		for _, k := range sorted {
			oldnew = append(oldnew, k, pattern[k])
			pairs = append(pairs, [2]string{k, pattern[k]})
		}
		var b strings.Builder
		for l := r.Intn(9); l > 0; l-- {
			b.WriteString(letters[r.Intn(len(letters))])
		}
		s := b.String()
		got := strings.NewReplacer(oldnew...).Replace(s)
		p, _ := json.Marshal(pairs)
		in, _ := json.Marshal(s)
		out := "invalid"
		if utf8.ValidString(got) {
			o, _ := json.Marshal(got)
			out = string(o)
		}
		fmt.Printf("%s\t%s\t%s\n", p, in, out)
	}
}
