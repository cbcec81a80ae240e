// Command gotruth prints OPA's results for generated number cases as TSV
// (op, a, b, result), using real math/big. It re-implements, with the standard library
// only, the OPA paths the Rust crate follows: v1/topdown/arithmetic.go (arithOp.eval,
// arithUnary, arithRound/Ceil/Floor), v1/topdown/aggregates.go (sum, product) and
// v1/topdown/builtins/builtins.go (NumberToFloat, FloatToNumber, IntToNumber).
//
// Operands are handed to OPA in canonical text (integers in full digits, other values as
// digits and a decimal exponent), the text the Rust crate assumes for a value.
//
// Usage: go run . [-n cases-per-op] [-seed n] > ../tests/opa_truth.tsv
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"math/rand"
	"os"
	"strconv"
	"strings"
)

var (
	errDivideByZero     = errors.New("divide by zero")
	errModuloByZero     = errors.New("modulo by zero")
	errModuloOnFloating = errors.New("modulo on floating-point number")
)

// canonical turns any number text into the canonical text of its value.
func canonical(s string) string {
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		panic("bad operand " + s)
	}
	if r.IsInt() {
		return r.Num().String()
	}
	// r = p / q with q = 2^a 5^b: scale to digits * 10^-k.
	p := new(big.Int).Set(r.Num())
	q := new(big.Int).Set(r.Denom())
	k := 0
	ten := big.NewInt(10)
	for {
		m := new(big.Int)
		if m.Mod(new(big.Int).Mul(p, new(big.Int).Exp(ten, big.NewInt(int64(k)), nil)), q).Sign() == 0 {
			break
		}
		k++
	}
	d := new(big.Int).Mul(p, new(big.Int).Exp(ten, big.NewInt(int64(k)), nil))
	d.Quo(d, q)
	return d.String() + "e-" + strconv.Itoa(k)
}

func smallInt(n string) (int64, bool) {
	i, err := strconv.ParseInt(n, 10, 64)
	return i, err == nil && -1<<31 <= i && i <= 1<<31-1
}

// numberToInt: the exact integer of an integer value (post-#8887 OPA no longer rounds here).
func numberToInt(n string) (*big.Int, bool) {
	r, ok := new(big.Rat).SetString(n)
	if !ok || !r.IsInt() {
		return nil, false
	}
	return new(big.Int).Set(r.Num()), true
}

func numberToFloat(n string) *big.Float {
	r, ok := new(big.Float).SetString(n)
	if !ok {
		panic("illegal value " + n)
	}
	return r
}

func floatToNumber(f *big.Float) string {
	var format byte = 'g'
	if f.IsInt() {
		format = 'f'
	}
	return f.Text(format, -1)
}

type arithOp struct {
	small   func(x, y int64) (int64, bool, error)
	exact   func(z, x, y *big.Int) (*big.Int, error)
	float   func(z, x, y *big.Float) (*big.Float, error)
	noFloat error
}

func (op arithOp) eval(n1, n2 string) (string, error) {
	if x, ok := smallInt(n1); ok {
		if y, ok := smallInt(n2); ok {
			r, ok, err := op.small(x, y)
			if err != nil {
				return "", err
			}
			if ok {
				return strconv.FormatInt(r, 10), nil
			}
		}
	}
	if op.exact != nil {
		if x, ok := numberToInt(n1); ok {
			if y, ok := numberToInt(n2); ok {
				r, err := op.exact(new(big.Int), x, y)
				if err != nil {
					return "", err
				}
				return r.String(), nil
			}
		}
	}
	if op.float == nil {
		return "", op.noFloat
	}
	r, err := op.float(new(big.Float), numberToFloat(n1), numberToFloat(n2))
	if err != nil {
		return "", err
	}
	return floatToNumber(r), nil
}

func infallible[T any](f func(z, x, y *T) *T) func(z, x, y *T) (*T, error) {
	return func(z, x, y *T) (*T, error) { return f(z, x, y), nil }
}

func always(f func(x, y int64) int64) func(x, y int64) (int64, bool, error) {
	return func(x, y int64) (int64, bool, error) { return f(x, y), true, nil }
}

var ops = map[string]arithOp{
	"add": {small: always(func(x, y int64) int64 { return x + y }), exact: infallible((*big.Int).Add), float: infallible((*big.Float).Add)},
	"sub": {small: always(func(x, y int64) int64 { return x - y }), exact: infallible((*big.Int).Sub), float: infallible((*big.Float).Sub)},
	"mul": {small: always(func(x, y int64) int64 { return x * y }), exact: infallible((*big.Int).Mul), float: infallible((*big.Float).Mul)},
	"div": {
		small: func(x, y int64) (int64, bool, error) {
			if y == 0 {
				return 0, false, errDivideByZero
			}
			return x / y, x != 0 && x%y == 0, nil
		},
		float: func(z, x, y *big.Float) (*big.Float, error) {
			if i, acc := y.Int64(); acc == big.Exact && i == 0 {
				return nil, errDivideByZero
			}
			return z.Quo(x, y), nil
		},
	},
	"rem": {
		small: func(x, y int64) (int64, bool, error) {
			if y == 0 {
				return 0, false, errModuloByZero
			}
			return x % y, true, nil
		},
		exact: func(z, x, y *big.Int) (*big.Int, error) {
			if y.Sign() == 0 {
				return nil, errModuloByZero
			}
			return z.Rem(x, y), nil
		},
		noFloat: errModuloOnFloating,
	},
}

var halfAwayFromZero = big.NewFloat(0.5)

func arithRound(a *big.Float) *big.Float {
	var i *big.Int
	if a.Signbit() {
		i, _ = new(big.Float).Sub(a, halfAwayFromZero).Int(nil)
	} else {
		i, _ = new(big.Float).Add(a, halfAwayFromZero).Int(nil)
	}
	return new(big.Float).SetInt(i)
}

func arithCeil(a *big.Float) *big.Float {
	i, _ := a.Int(nil)
	f := new(big.Float).SetInt(i)
	if f.Signbit() || a.Cmp(f) == 0 {
		return f
	}
	return new(big.Float).Add(f, big.NewFloat(1.0))
}

func arithFloor(a *big.Float) *big.Float {
	i, _ := a.Int(nil)
	f := new(big.Float).SetInt(i)
	if !f.Signbit() || a.Cmp(f) == 0 {
		return f
	}
	return new(big.Float).Sub(f, big.NewFloat(1.0))
}

type unary struct {
	small func(x int64) int64
	float func(x *big.Float) *big.Float
}

func identity(x int64) int64 { return x }

var unaries = map[string]unary{
	"abs":   {small: func(x int64) int64 { return max64(x, -x) }, float: func(x *big.Float) *big.Float { return x.Abs(x) }},
	"round": {small: identity, float: arithRound},
	"ceil":  {small: identity, float: arithCeil},
	"floor": {small: identity, float: arithFloor},
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

func (op unary) eval(n string) string {
	if x, ok := smallInt(n); ok {
		return strconv.FormatInt(op.small(x), 10)
	}
	return floatToNumber(op.float(numberToFloat(n)))
}

func exactAccumulate(items []string, init int64, op func(z, x, y *big.Int) *big.Int) (string, bool) {
	acc := big.NewInt(init)
	for _, n := range items {
		i, ok := numberToInt(n)
		if !ok {
			return "", false
		}
		op(acc, acc, i)
	}
	return acc.String(), true
}

func sum(items []string) string {
	if n, ok := exactAccumulate(items, 0, (*big.Int).Add); ok {
		return n
	}
	s := new(big.Float)
	tmp := new(big.Float)
	for _, n := range items {
		if _, ok := tmp.SetString(n); !ok {
			panic(n)
		}
		s = s.Add(s, tmp)
	}
	return floatToNumber(s)
}

func product(items []string) string {
	if n, ok := exactAccumulate(items, 1, (*big.Int).Mul); ok {
		return n
	}
	p := big.NewFloat(1)
	tmp := new(big.Float)
	for _, n := range items {
		if _, ok := tmp.SetString(n); !ok {
			panic(n)
		}
		p = p.Mul(p, tmp)
	}
	return floatToNumber(p)
}

func compare(a, b string) string {
	x, _ := new(big.Rat).SetString(a)
	y, _ := new(big.Rat).SetString(b)
	return strconv.Itoa(x.Cmp(y))
}

// ---- operand families ----

var fixed = []string{
	"0", "-0", "0.0", "1", "-1", "2", "3", "7", "10", "1.0", "10.0", "1e2", "100", "0.1", "0.2", "0.3", "0.7", "0.8",
	"4.35", "100", "0.5", "-0.5", "1.5", "-1.5", "2.5", "-2.5", "0.49999999999999999999", "0.99999999999999999999",
	"-0.25", "-0.75", "0.0000001", "1e-5", "1e-4", "123456.5", "1234567.5", "1e6", "1e21", "1e-30", "1e300", "1e-400",
	"1e400", "-1e400", "1.0000000000000001", "1.00000000000000000001", "9007199254740993", "9007199254740992",
	"-9007199254740993", "9223372036854775807", "9223372036854775808", "-9223372036854775808", "18446744073709551615",
	"18446744073709551616", "18446744073709551617", "2147483647", "2147483648", "-2147483648", "-2147483649",
	"123456789012345678901234567890", "-98765432109876543210987654321", "3.14159265358979323846264338327950288",
	"2.718281828459045", "0.30000000000000004", "1.7976931348623157e308", "5e-324", "4.9e-324", "1e-60", "7e-80",
	"123.456e-100", "6.02214076e23", "1.5e-7", "0.1e1", "1.e1", ".5", "+3",
}

func digits(r *rand.Rand, n int) string {
	var sb strings.Builder
	sb.WriteByte(byte('1' + r.Intn(9)))
	for i := 1; i < n; i++ {
		sb.WriteByte(byte('0' + r.Intn(10)))
	}
	return sb.String()
}

func operand(r *rand.Rand) string {
	neg := ""
	if r.Intn(3) == 0 {
		neg = "-"
	}
	switch r.Intn(10) {
	case 0, 1:
		return fixed[r.Intn(len(fixed))]
	case 2: // short decimals
		return neg + strconv.Itoa(r.Intn(100)) + "." + digits(r, 1+r.Intn(3))
	case 3: // 17-21 significant digits
		n := 17 + r.Intn(5)
		p := 1 + r.Intn(n-1)
		d := digits(r, n)
		return neg + d[:p] + "." + d[p:]
	case 4: // near powers of two, +-1 ulp-ish
		e := r.Intn(130) - 65
		f := new(big.Float).SetPrec(200).SetMantExp(big.NewFloat(1), e)
		delta := new(big.Float).SetPrec(200).SetMantExp(big.NewFloat(float64(r.Intn(5)-2)), e-64-r.Intn(3))
		f.Add(f, delta)
		return neg + f.Text('g', 40)
	case 5: // ties at the 64th bit: odd multiple of 2^-64 scaled
		m := new(big.Int).Lsh(big.NewInt(1), 64)
		m.Add(m, big.NewInt(int64(2*r.Intn(100)+1)))
		f := new(big.Float).SetPrec(300).SetInt(m)
		f.SetMantExp(f, -r.Intn(80))
		return neg + f.Text('g', 60)
	case 6: // integers near 2^53, 2^63, 2^64
		bases := []uint{31, 53, 63, 64, 65}
		b := new(big.Int).Lsh(big.NewInt(1), bases[r.Intn(len(bases))])
		b.Add(b, big.NewInt(int64(r.Intn(7)-3)))
		return neg + b.String()
	case 7: // big ints
		return neg + digits(r, 20+r.Intn(15))
	case 8: // wide exponents
		es := []int{-400, -330, -300, -30, -20, 20, 30, 300, 330, 400}
		return neg + digits(r, 1+r.Intn(20)) + "e" + strconv.Itoa(es[r.Intn(len(es))]+r.Intn(5))
	default: // small ints, non-canonical forms
		switch r.Intn(4) {
		case 0:
			return neg + strconv.Itoa(r.Intn(1000))
		case 1:
			return neg + strconv.Itoa(r.Intn(100)) + ".0"
		case 2:
			return neg + strconv.Itoa(1+r.Intn(9)) + "e" + strconv.Itoa(r.Intn(4))
		default:
			return neg + strconv.Itoa(r.Intn(1000)) + ".00"
		}
	}
}

func result(s string, err error) string {
	if err != nil {
		return "error:" + err.Error()
	}
	return s
}

func main() {
	n := flag.Int("n", 400, "cases per op")
	seed := flag.Int64("seed", 1, "seed")
	flag.Parse()
	r := rand.New(rand.NewSource(*seed))
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	binops := []string{"add", "sub", "mul", "div", "rem", "cmp"}
	for _, op := range binops {
		for i := 0; i < *n; i++ {
			a, b := operand(r), operand(r)
			if i < len(fixed) {
				a = fixed[i]
			}
			if op == "div" && i%17 == 0 {
				b = []string{"0", "0.0", "-0", "0e5"}[i%4]
			}
			if op == "rem" && i%13 == 0 {
				b = []string{"18446744073709551616", "0", "36893488147419103232"}[i%3]
			}
			ca, cb := canonical(a), canonical(b)
			var res string
			if op == "cmp" {
				res = compare(ca, cb)
			} else {
				res = result(ops[op].eval(ca, cb))
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", op, a, b, res)
		}
	}
	for _, op := range []string{"round", "ceil", "floor", "abs"} {
		for i := 0; i < *n; i++ {
			a := operand(r)
			if i < len(fixed) {
				a = fixed[i]
			}
			fmt.Fprintf(w, "%s\t%s\t\t%s\n", op, a, unaries[op].eval(canonical(a)))
		}
	}
	for _, op := range []string{"sum", "product"} {
		for i := 0; i < *n; i++ {
			k := r.Intn(5)
			items := make([]string, k)
			canon := make([]string, k)
			for j := range items {
				items[j] = operand(r)
				canon[j] = canonical(items[j])
			}
			var res string
			if op == "sum" {
				res = sum(canon)
			} else {
				res = product(canon)
			}
			fmt.Fprintf(w, "%s\t%s\t\t%s\n", op, strings.Join(items, ","), res)
		}
	}
}
