// A transactional producer for tests: commits some events and aborts others, so that a consumer
// reading with isolation.level=read_committed can be shown to skip exactly the aborted ones.
// Written against the kafka-clients jar that scripts/kafka.sh fetches; `scripts/kafka.sh
// txproduce` compiles it on first use and runs it.
//
// Usage: TxProducer BOOTSTRAP TOPIC [TRANSACTIONAL_ID] < SCRIPT
//
// SCRIPT has one command per line (blank lines and lines starting with # are skipped):
//   begin                      start a transaction
//   send PARTITION PAYLOAD     send PAYLOAD (the rest of the line, unkeyed) to PARTITION,
//                              or to the default partitioner with PARTITION "-"
//   commit                     flush and commit the open transaction
//   abort                      flush and abort it: the records are written to the log first,
//                              so a reader has aborted records to skip
// Prints "committed N" or "aborted N" per transaction on stdout. Exit 1 on any failure (with a
// line on stderr), 2 on a malformed script.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Properties;
import java.util.UUID;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringSerializer;

public final class TxProducer {
    private TxProducer() {}

    /** A script error: the line number and what is wrong with it. */
    private static final class ScriptError extends Exception {
        ScriptError(int line, String what) {
            super("line " + line + ": " + what);
        }
    }

    public static void main(String[] args) {
        if (args.length < 2 || args.length > 3) {
            System.err.println("usage: TxProducer BOOTSTRAP TOPIC [TRANSACTIONAL_ID] < SCRIPT");
            System.exit(2);
        }
        String topic = args[1];
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG,
                args.length == 3 ? args[2] : "txproduce-" + UUID.randomUUID());
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        // A busy 2-core machine: generous bounds rather than the defaults' tighter ones.
        props.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "120000");
        props.put(ProducerConfig.TRANSACTION_TIMEOUT_CONFIG, "120000");
        props.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "120000");
        props.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "60000");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());

        int committed = 0;
        int aborted = 0;
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            producer.initTransactions();
            BufferedReader in = new BufferedReader(
                    new InputStreamReader(System.in, StandardCharsets.UTF_8));
            boolean open = false;
            int sent = 0;
            int lineNo = 0;
            String line;
            while ((line = in.readLine()) != null) {
                lineNo++;
                if (line.isBlank() || line.startsWith("#")) {
                    continue;
                }
                String[] parts = line.split(" ", 3);
                switch (parts[0]) {
                    case "begin":
                        if (open) {
                            throw new ScriptError(lineNo, "begin inside an open transaction");
                        }
                        producer.beginTransaction();
                        open = true;
                        sent = 0;
                        break;
                    case "send":
                        if (!open) {
                            throw new ScriptError(lineNo, "send outside a transaction");
                        }
                        if (parts.length < 3) {
                            throw new ScriptError(lineNo, "send needs PARTITION and PAYLOAD");
                        }
                        Integer partition;
                        try {
                            partition = parts[1].equals("-") ? null : Integer.valueOf(parts[1]);
                        } catch (NumberFormatException e) {
                            throw new ScriptError(lineNo, "partition is not a number: " + parts[1]);
                        }
                        producer.send(new ProducerRecord<>(topic, partition, null, parts[2]));
                        sent++;
                        break;
                    case "commit":
                    case "abort":
                        if (!open) {
                            throw new ScriptError(lineNo, parts[0] + " outside a transaction");
                        }
                        // Flush first: abortTransaction drops unsent records, and the point of
                        // an aborted transaction here is records in the log that must be skipped.
                        producer.flush();
                        if (parts[0].equals("commit")) {
                            producer.commitTransaction();
                            committed += sent;
                            System.out.println("committed " + sent);
                        } else {
                            producer.abortTransaction();
                            aborted += sent;
                            System.out.println("aborted " + sent);
                        }
                        open = false;
                        break;
                    default:
                        throw new ScriptError(lineNo, "unknown command: " + parts[0]);
                }
            }
            if (open) {
                throw new ScriptError(lineNo, "the script ends inside an open transaction");
            }
        } catch (ScriptError e) {
            System.err.println("TxProducer: " + e.getMessage());
            System.exit(2);
        } catch (Exception e) {
            System.err.println("TxProducer: " + e);
            System.exit(1);
        }
        System.err.println("TxProducer: " + committed + " records committed, " + aborted
                + " aborted, on " + topic);
    }
}
