// Command demo is a small in-process "order service" that allocates in a recognisable way
// until it is killed: attach gotrace to it to see where its heap memory comes from.
//
//	go run . [-rate ORDERS_PER_SECOND]
//
// Every order goes through four steps, each with its own allocation pattern:
//   - newOrder:      one *Order struct, and its []LineItem grown by append;
//   - price:         nothing (arithmetic only): it should not show up in a profile;
//   - receipt:       strings built with fmt.Sprintf and strings.Builder;
//   - (*Store).Save: a map insert, and now and then a fresh map when the store rotates.
package main

import (
	"flag"
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"strings"
	"time"
)

type LineItem struct {
	SKU      string
	Quantity int
	Cents    int64
}

type Order struct {
	ID       string
	Customer string
	Items    []LineItem
	Total    int64
	Receipt  string
}

var catalog = []struct {
	sku   string
	cents int64
}{
	{"tea-green", 450}, {"tea-black", 390}, {"mug-large", 1290},
	{"kettle", 4990}, {"biscuits", 275}, {"honey", 820},
}

var customers = []string{"ada", "grace", "linus", "ken", "rob", "barbara"}

// newOrder allocates the order and appends between 1 and 8 line items to it.
func newOrder(seq int, rng *rand.Rand) *Order {
	o := &Order{
		ID:       fmt.Sprintf("ord-%08d", seq),
		Customer: customers[rng.Intn(len(customers))],
	}
	for n := 1 + rng.Intn(8); n > 0; n-- {
		p := catalog[rng.Intn(len(catalog))]
		o.Items = append(o.Items, LineItem{SKU: p.sku, Quantity: 1 + rng.Intn(3), Cents: p.cents})
	}
	return o
}

// price computes the total without allocating.
func price(o *Order) {
	o.Total = 0
	for _, it := range o.Items {
		o.Total += int64(it.Quantity) * it.Cents
	}
}

// receipt renders a text receipt.
func receipt(o *Order) string {
	var b strings.Builder
	b.WriteString("order " + o.ID + " for " + o.Customer + "\n")
	for _, it := range o.Items {
		b.WriteString(fmt.Sprintf("  %-10s x%d  %6.2f\n", it.SKU, it.Quantity, float64(it.Cents)/100))
	}
	fmt.Fprintf(&b, "  total %.2f\n", float64(o.Total)/100)
	return b.String()
}

// Store keeps the most recent orders; it starts a new map every `capacity` orders, so old
// orders become garbage in bulk.
type Store struct {
	capacity int
	orders   map[string]*Order
	rotated  int
}

func (s *Store) Save(o *Order) {
	if s.orders == nil || len(s.orders) >= s.capacity {
		s.orders = make(map[string]*Order)
		s.rotated++
	}
	s.orders[o.ID] = o
}

func main() {
	rate := flag.Int("rate", 5000, "orders per second")
	flag.Parse()
	if *rate <= 0 {
		fmt.Fprintln(os.Stderr, "demo: -rate must be positive")
		os.Exit(2)
	}
	fmt.Printf("demo: order service running as pid %d, %d orders/s (Ctrl-C to stop)\n", os.Getpid(), *rate)

	const tick = 10 * time.Millisecond
	perTick := *rate / int(time.Second/tick)
	if perTick == 0 {
		perTick = 1
	}
	rng := rand.New(rand.NewSource(1))
	store := &Store{capacity: 10000}
	var seq int
	var revenue int64
	lastReport := time.Now()
	for range time.Tick(tick) {
		for i := 0; i < perTick; i++ {
			seq++
			o := newOrder(seq, rng)
			price(o)
			o.Receipt = receipt(o)
			store.Save(o)
			revenue += o.Total
		}
		if time.Since(lastReport) >= 3*time.Second {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Printf("demo: %d orders, revenue %.2f, %d stored, %d rotations, heap %d KiB, %d GCs\n",
				seq, float64(revenue)/100, len(store.orders), store.rotated, ms.HeapAlloc/1024, ms.NumGC)
			lastReport = time.Now()
		}
	}
}
