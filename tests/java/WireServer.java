// A plain Java server speaking tuner's probe wire protocol (man tuner-probe, WIRE
// PROTOCOL), written the way ordinary Java servers are, so tests can diagnose a JVM
// tuner did not start itself:
//   java WireServer nio PORT [BACKLOG]      one selector thread (NIO), like Netty/Jetty
//   java WireServer threads PORT [BACKLOG]  one blocking thread per connection
// Per connection: send a 4-byte big-endian index, read the 4-byte echo, answer 0x06
// (ACK) or 0x15 (NAK) and close, then hold the connection until the peer closes.
// When accept() fails (EMFILE: "Too many open files") or a thread cannot start, it
// logs once, backs off 50 ms and keeps serving, as production servers do; connections
// the kernel completed meanwhile wait in the listen backlog.
import java.io.*;
import java.net.*;
import java.nio.ByteBuffer;
import java.nio.channels.*;
import java.util.Iterator;
import java.util.concurrent.atomic.AtomicInteger;

public class WireServer {
    static final AtomicInteger next = new AtomicInteger();
    static volatile boolean warned = false;

    static void warn(String what, Throwable e) {
        if (!warned) { warned = true; System.err.println(what + ": " + e); }
    }

    public static void main(String[] args) throws Exception {
        String mode = args[0];
        int port = Integer.parseInt(args[1]);
        int backlog = args.length > 2 ? Integer.parseInt(args[2]) : 4096;
        if (mode.equals("threads")) threads(port, backlog); else nio(port, backlog);
    }

    static void nio(int port, int backlog) throws IOException, InterruptedException {
        Selector sel = Selector.open();
        ServerSocketChannel srv = ServerSocketChannel.open();
        srv.bind(new InetSocketAddress("127.0.0.1", port), backlog);
        srv.configureBlocking(false);
        srv.register(sel, SelectionKey.OP_ACCEPT);
        System.out.println("listening " + port);
        System.out.flush();
        while (true) {
            sel.select(100);
            Iterator<SelectionKey> it = sel.selectedKeys().iterator();
            while (it.hasNext()) {
                SelectionKey k = it.next();
                it.remove();
                if (!k.isValid()) continue;
                if (k.isAcceptable()) {
                    while (true) {
                        SocketChannel c;
                        try {
                            c = srv.accept();
                        } catch (IOException e) {
                            warn("accept", e);
                            Thread.sleep(50);
                            break;
                        }
                        if (c == null) break;
                        try {
                            c.configureBlocking(false);
                            ByteBuffer out = ByteBuffer.allocate(4).putInt(next.getAndIncrement());
                            out.flip();
                            c.write(out);
                            out.flip();
                            c.register(sel, SelectionKey.OP_READ, new Object[]{out.duplicate(), ByteBuffer.allocate(4), Boolean.FALSE});
                        } catch (IOException e) {   // the client reset before the index left
                            c.close();
                        }
                    }
                } else if (k.isReadable()) {
                    SocketChannel c = (SocketChannel) k.channel();
                    Object[] st = (Object[]) k.attachment();
                    ByteBuffer in = (ByteBuffer) st[1];
                    int n;
                    try {
                        n = ((Boolean) st[2]) ? c.read(ByteBuffer.allocate(64)) : c.read(in);
                    } catch (IOException e) {
                        n = -1;
                    }
                    if (n < 0) { k.cancel(); c.close(); continue; }
                    if (!((Boolean) st[2]) && !in.hasRemaining()) {
                        in.flip();
                        boolean ok = in.equals((ByteBuffer) st[0]);
                        try {
                            c.write(ByteBuffer.wrap(new byte[]{(byte) (ok ? 6 : 0x15)}));
                        } catch (IOException e) {
                            ok = false;
                        }
                        if (!ok) { k.cancel(); c.close(); continue; }
                        st[2] = Boolean.TRUE;
                    }
                }
            }
        }
    }

    static void threads(int port, int backlog) throws IOException, InterruptedException {
        ServerSocket srv = new ServerSocket();
        srv.bind(new InetSocketAddress("127.0.0.1", port), backlog);
        System.out.println("listening " + port);
        System.out.flush();
        while (true) {
            Socket s;
            try {
                s = srv.accept();
            } catch (IOException e) {
                warn("accept", e);
                Thread.sleep(50);
                continue;
            }
            final Socket c = s;
            try {
                new Thread(() -> serve(c)).start();
            } catch (Throwable e) {   // OutOfMemoryError: unable to create native thread
                warn("thread", e);
                try { c.close(); } catch (IOException ignored) { }
                Thread.sleep(50);
            }
        }
    }

    static void serve(Socket c) {
        try (Socket s = c) {
            int idx = next.getAndIncrement();
            DataOutputStream out = new DataOutputStream(s.getOutputStream());
            DataInputStream in = new DataInputStream(s.getInputStream());
            out.writeInt(idx);
            out.flush();
            int echo = in.readInt();
            out.write(echo == idx ? 6 : 0x15);
            out.flush();
            if (echo != idx) return;
            while (in.read() >= 0) { }
        } catch (IOException ignored) {
        }
    }
}
