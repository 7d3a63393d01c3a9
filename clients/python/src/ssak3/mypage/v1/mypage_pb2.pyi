import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from ssak3.type.v1 import money_pb2 as _money_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReservationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_STATUS_UNSPECIFIED: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_PAID: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_CANCELLED: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_REFUNDED: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_CLEANED: _ClassVar[ReservationStatus]
RESERVATION_STATUS_UNSPECIFIED: ReservationStatus
RESERVATION_STATUS_PAID: ReservationStatus
RESERVATION_STATUS_CANCELLED: ReservationStatus
RESERVATION_STATUS_REFUNDED: ReservationStatus
RESERVATION_STATUS_CLEANED: ReservationStatus

class ListMyReservationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMyReservationsResponse(_message.Message):
    __slots__ = ("reservations", "next_page_token")
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    reservations: _containers.RepeatedCompositeFieldContainer[ReservationView]
    next_page_token: str
    def __init__(self, reservations: _Optional[_Iterable[_Union[ReservationView, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetMyReservationRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class WatchMyReservationsRequest(_message.Message):
    __slots__ = ("after_update_time",)
    AFTER_UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    after_update_time: _timestamp_pb2.Timestamp
    def __init__(self, after_update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReservationView(_message.Message):
    __slots__ = ("reservation_id", "customer_id", "cleaner_id", "address", "scheduled_at", "price", "status", "history", "update_time")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CLEANER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    customer_id: str
    cleaner_id: str
    address: str
    scheduled_at: _timestamp_pb2.Timestamp
    price: _money_pb2.Money
    status: ReservationStatus
    history: _containers.RepeatedCompositeFieldContainer[StatusChange]
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, reservation_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., cleaner_id: _Optional[str] = ..., address: _Optional[str] = ..., scheduled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., price: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., status: _Optional[_Union[ReservationStatus, str]] = ..., history: _Optional[_Iterable[_Union[StatusChange, _Mapping]]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StatusChange(_message.Message):
    __slots__ = ("status", "time", "event_id")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    status: ReservationStatus
    time: _timestamp_pb2.Timestamp
    event_id: str
    def __init__(self, status: _Optional[_Union[ReservationStatus, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_id: _Optional[str] = ...) -> None: ...
