// Sends records with Apache Kafka's own Java producer, as many producers in the wild do.
//
// java -cp '<kafka libs>/*' ProduceRecords.java BOOTSTRAP TOPIC CODEC < records
// Each line of standard input is one record: "KEY VALUE", each base64 or "-" for null.
// The records go in order through one producer with compression.type CODEC, then it flushes;
// exit 0 once Kafka has acknowledged every record.
import java.util.Base64;
import java.util.Properties;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class ProduceRecords {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("compression.type", args[2]);
        props.put("acks", "all");
        props.put("linger.ms", "20");
        try (KafkaProducer<byte[], byte[]> producer =
                new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer())) {
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
            java.util.List<java.util.concurrent.Future<?>> sent = new java.util.ArrayList<>();
            for (String line = in.readLine(); line != null; line = in.readLine()) {
                String[] parts = line.split(" ", 2);
                sent.add(producer.send(new ProducerRecord<>(args[1], bytes(parts[0]), bytes(parts[1]))));
            }
            producer.flush();
            for (java.util.concurrent.Future<?> f : sent) {
                f.get();
            }
        }
    }

    private static byte[] bytes(String field) {
        return field.equals("-") ? null : Base64.getDecoder().decode(field);
    }
}
