// Gorilla WebSocket, a peer in uringcast's benchmarks (scripts/bench.sh), written as the
// library's chat example (examples/chat: hub.go, client.go) shows: a Hub goroutine owning its
// clients, with register, unregister and broadcast channels; a Client with a readPump that
// hands each message to the hub and a writePump that writes what its send channel holds. Here
// one hub per topic, created on first use.
//
// The benchmark's URL convention (scripts/peers/README.md):
//
//	/<topic>          joins <topic>; every message it sends goes to the topic, itself included
//	/publish/<topic>  joins nothing; every message it sends goes to <topic>'s subscribers
//
// -mode echo sends each message back to its sender instead. Limits as for every server in the
// benchmark: messages up to 16 MiB (SetReadLimit), and a client with more than 1 MiB queued
// is dropped as a slow consumer (the chat example drops a client whose send channel is full;
// here the queue is counted in bytes). No pings (uringcast runs with --ping-interval 0).
// Listens on 127.0.0.1 only. Run with GOMAXPROCS=1 for one thread.
package main

import (
	"flag"
	"log"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/gorilla/websocket"
)

const (
	maxMessageSize    = 16 << 20
	backpressureLimit = 1 << 20
	// Enough slots for 1 MiB of the smallest messages: the byte count decides, not the slots.
	sendSlots = 1 << 16
)

var upgrader = websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024}

type message struct {
	kind int
	data []byte
}

// Client is a middleman between the websocket connection and the hub.
type Client struct {
	hub    *Hub
	conn   *websocket.Conn
	send   chan message
	queued int64
}

// Hub maintains the set of active clients of a topic and broadcasts messages to them.
type Hub struct {
	clients    map[*Client]bool
	broadcast  chan message
	register   chan *Client
	unregister chan *Client
}

func newHub() *Hub {
	return &Hub{
		clients:    make(map[*Client]bool),
		broadcast:  make(chan message, 256),
		register:   make(chan *Client),
		unregister: make(chan *Client),
	}
}

func (h *Hub) run() {
	for {
		select {
		case client := <-h.register:
			h.clients[client] = true
		case client := <-h.unregister:
			if _, ok := h.clients[client]; ok {
				delete(h.clients, client)
				close(client.send)
			}
		case m := <-h.broadcast:
			for client := range h.clients {
				if atomic.AddInt64(&client.queued, int64(len(m.data))) > backpressureLimit {
					// A slow consumer.
					close(client.send)
					delete(h.clients, client)
					continue
				}
				select {
				case client.send <- m:
				default:
					close(client.send)
					delete(h.clients, client)
				}
			}
		}
	}
}

var (
	hubsMu sync.Mutex
	hubs   = map[string]*Hub{}
)

func hubOf(topic string) *Hub {
	hubsMu.Lock()
	defer hubsMu.Unlock()
	h, ok := hubs[topic]
	if !ok {
		h = newHub()
		hubs[topic] = h
		go h.run()
	}
	return h
}

// readPump hands the connection's messages to the hub (or back to itself in echo mode).
func (c *Client) readPump(echo bool, subscribed bool) {
	defer func() {
		if subscribed {
			c.hub.unregister <- c
		} else {
			close(c.send)
		}
		c.conn.Close()
	}()
	c.conn.SetReadLimit(maxMessageSize)
	for {
		kind, data, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		if echo {
			atomic.AddInt64(&c.queued, int64(len(data)))
			c.send <- message{kind, data}
			continue
		}
		c.hub.broadcast <- message{kind, data}
	}
}

// writePump writes what the hub queued for the connection.
func (c *Client) writePump() {
	defer c.conn.Close()
	for m := range c.send {
		if err := c.conn.WriteMessage(m.kind, m.data); err != nil {
			return
		}
		atomic.AddInt64(&c.queued, -int64(len(m.data)))
	}
	c.conn.WriteMessage(websocket.CloseMessage, []byte{})
}

func serveWs(echo bool, w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	path := r.URL.Path
	publishOnly := strings.HasPrefix(path, "/publish/")
	if publishOnly {
		path = strings.TrimPrefix(path, "/publish")
	}
	topic := "/"
	if path != "/" {
		topic = strings.TrimPrefix(path, "/")
	}
	client := &Client{hub: hubOf(topic), conn: conn, send: make(chan message, sendSlots)}
	subscribed := !echo && !publishOnly
	if subscribed {
		client.hub.register <- client
	}
	go client.writePump()
	go client.readPump(echo, subscribed)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address (loopback)")
	mode := flag.String("mode", "broadcast", "broadcast or echo")
	flag.Parse()
	echo := *mode == "echo"
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { serveWs(echo, w, r) })
	log.Printf("listening on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, nil))
}
