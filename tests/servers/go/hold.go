// hold: a Go TCP server that holds every connection it accepts and writes "ok\n" on each
// (tests/test_apps_runtimes.py: the Go adapter reads its build information and its
// descriptor limit, which Go 1.19+ raises from soft to hard at start).
package main

import (
	"net"
	"os"
)

func main() {
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		panic(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		c.Write([]byte("ok\n"))
		go func(c net.Conn) {
			buf := make([]byte, 1)
			c.Read(buf)
			c.Close()
		}(c)
	}
}
