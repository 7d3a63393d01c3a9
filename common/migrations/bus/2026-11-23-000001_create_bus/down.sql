DROP TABLE bus_messages;
